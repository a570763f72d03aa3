"""The test project's app: tasks and the views that enqueue them."""
