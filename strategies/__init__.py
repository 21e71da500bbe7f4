"""Flower strategies selectable with `strategy.name`."""

from .msnat import MSNATStrategy

__all__ = ["MSNATStrategy"]
