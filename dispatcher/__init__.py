"""The dispatcher: a Flask app (app factory in `app.py`) over one storage module."""
