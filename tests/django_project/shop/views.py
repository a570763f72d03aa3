"""Views that enqueue: one in autocommit, one inside a transaction that may roll back."""

from __future__ import annotations

from django.db import transaction
from django.http import JsonResponse

from tests.django_project.shop.tasks import ShopError, send_receipt
from tests.django_project.shop.tasks import add as add_task


def add(request):
    result = add_task.enqueue(int(request.POST["a"]), int(request.POST["b"]))
    return JsonResponse({"id": result.id, "status": str(result.status)})


def order(request):
    """Enqueue the receipt in the order's transaction; `fail` rolls the order back."""
    seen = {}
    try:
        with transaction.atomic():
            result = send_receipt.enqueue(int(request.POST["order"]), to=request.POST["to"])
            seen["id"] = result.id
            # Inside the transaction the task is there, and readable through Django.
            seen["inside"] = str(send_receipt.get_result(result.id).status)
            if request.POST.get("fail"):
                raise ShopError("payment declined")
    except ShopError:
        return JsonResponse(seen, status=402)
    return JsonResponse(seen)
