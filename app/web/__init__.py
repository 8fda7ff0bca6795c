"""The trading dashboard: static ES modules served at `/`, over the public API."""

from app.web.dashboard import enable_demo_sign_in, install_dashboard

__all__ = ["enable_demo_sign_in", "install_dashboard"]
