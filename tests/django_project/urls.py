"""The shop's views."""

from django.urls import path

from tests.django_project.shop import views

urlpatterns = [
    path("add/", views.add),
    path("order/", views.order),
]
