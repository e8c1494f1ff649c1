"""The server process: gunicorn and its worker, the actor start-up order, the command line, the demo."""
