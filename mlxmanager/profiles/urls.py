from django.urls import path

from mlxmanager.profiles import views

urlpatterns = [
    path("", views.profile_list, name="profiles"),
    path("new/", views.profile_create, name="profile-create"),
    path("<int:pk>/edit/", views.profile_edit, name="profile-edit"),
    path("<int:pk>/delete/", views.profile_delete, name="profile-delete"),
]
