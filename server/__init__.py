"""callgate: a self-hosted Model Address for Alibaba Cloud's communication engine."""

__version__ = "0.1.0"
