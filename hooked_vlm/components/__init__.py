"""Family-agnostic building blocks. Nothing here knows which model family it belongs to."""
