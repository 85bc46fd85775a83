"""headend: head-end and energy accounting for a national smart-meter fleet.

Meters speak DLMS/COSEM over TCP; the codec lives in Rust (``headend._core``, reached
through :mod:`headend.codec`); everything is stored in ClickHouse. See ARCHITECTURE.md.
"""

from headend.codec import __version__

__all__ = ["__version__"]
