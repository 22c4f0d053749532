"""What people see of templatefix outside the terminal: the web app (``templatefix.ui.app``)."""
