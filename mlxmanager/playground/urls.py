from django.urls import path

from mlxmanager.playground import views

urlpatterns = [
    path("", views.playground, name="playground"),
    path("conversations/", views.conversation_list, name="playground-conversations"),
    path("<int:conversation_id>/", views.playground, name="playground-conversation"),
    path("<int:conversation_id>/delete/", views.conversation_delete, name="playground-delete"),
]
