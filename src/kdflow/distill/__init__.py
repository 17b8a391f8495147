"""Distillation methods; importing this package registers the built-in ones."""

from kdflow.distill import fkd, kdep, supervised  # noqa: F401
from kdflow.distill.base import METHODS, Method, MethodContext, get_method, register_method

__all__ = ["METHODS", "Method", "MethodContext", "get_method", "register_method"]
