"""`manage.py pgtasks_worker`."""
