"""Tasks: the data, loss and metric of each problem (``tfcredit.tasks.base.Task``)."""
