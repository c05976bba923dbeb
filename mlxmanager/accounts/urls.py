from django.contrib.auth import views as auth_views
from django.urls import path

from mlxmanager.accounts import password_views, views
from mlxmanager.accounts.forms import ThrottledLoginForm

urlpatterns = [
    path(
        "login/",
        views.LoginView.as_view(
            template_name="accounts/login.html",
            redirect_authenticated_user=True,
            authentication_form=ThrottledLoginForm,
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("setup/", views.setup_admin, name="setup"),
    path("setup/<str:token>", views.setup_start, name="setup-start"),
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("keys/team/", views.team_keys, name="team-keys"),
    path("keys/team/<int:key_id>/revoke/", views.team_key_revoke, name="team-key-revoke"),
    path("keys/team/<int:key_id>/limits/", views.team_key_limits, name="team-key-limits"),
    path("admin-tokens/", views.admin_tokens, name="admin-tokens"),
    path("admin-tokens/<int:token_id>/revoke/", views.admin_token_revoke, name="admin-token-revoke"),
    path("users/", views.users, name="users"),
    path("users/<int:user_id>/", views.user_change, name="user-change"),
    path("password/", password_views.password_change, name="password-change"),
    path("password/reset/<uidb64>/<token>/", password_views.reset_confirm, name="password-reset-confirm"),
    path("password/reset/done/", password_views.reset_complete, name="password-reset-complete"),
]
