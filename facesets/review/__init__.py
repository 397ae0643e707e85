"""``facesets review``: a local page over the library (facesets.review.server); static files in static/."""
