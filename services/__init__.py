"""The city's services. Each registers here as ``name -> "module:attribute"`` of its Service.

``cardless up`` starts every service listed; ``CARDLESS_SERVICES`` narrows or extends the list.
"""

REGISTRY: dict[str, str] = {
    "gateway": "services.gateway.app:SERVICE",
    "identity": "services.identity.app:SERVICE",
    "transit": "services.transit.app:SERVICE",
    "wallet": "services.wallet.app:SERVICE",
}
