"""sd_notify for the backend service: the shared implementation (protected_nn.service_support)."""
from protected_nn.service_support import sd_notify as notify, watchdog_interval

__all__ = ["notify", "watchdog_interval"]
