"""Serving: the HTTP API and web page with request batching (`serve`), and SavedModel / TFLite export (`export`)."""
