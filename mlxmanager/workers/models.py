"""Inference workers on other machines, reached over TCP (the embedded one needs no row)."""

from __future__ import annotations

from django.db import models


class Worker(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    # tcp://host:port or tls://host:port
    address = models.CharField(max_length=300, unique=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"
