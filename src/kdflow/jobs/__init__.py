"""What one workflow job does, as a plain function (the workflow scripts only parse arguments)."""
