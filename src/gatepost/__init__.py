"""gatepost: a postoffice network with SMTP gateways, sharing one store."""

__version__ = "0.1.0"
