"""A small Django project on pgtasks' Tasks backend, for tests/test_django.py.

`python tests/django_project/manage.py ...` with PGTASKS_TEST_DJANGO_DSN naming the
database; the `shop` app has the tasks (shop/tasks.py) and the views that enqueue them.
"""
