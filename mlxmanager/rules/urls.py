from django.urls import path

from mlxmanager.rules import views

urlpatterns = [
    path("routing/", views.rules, name="rules"),
    path("routing/order/", views.rule_order, name="rule-order"),
    path("routing/test/", views.rule_test, name="rule-test"),
    path("routing/<int:rule_id>/move/", views.rule_move, name="rule-move"),
    path("routing/<int:rule_id>/edit/", views.rule_edit, name="rule-edit"),
    path("routing/<int:rule_id>/toggle/", views.rule_toggle, name="rule-toggle"),
    path("routing/<int:rule_id>/delete/", views.rule_delete, name="rule-delete"),
]
