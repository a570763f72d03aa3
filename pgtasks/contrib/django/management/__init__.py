"""The app's management package."""
