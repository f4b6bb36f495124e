"""Clever Hans audits: does a class rely on a spurious region? (Lapuschkin et al. 2019; Arras et al. 2022)."""

from captum_ext.audit.clever_hans import CleverHansAudit
from captum_ext.audit.report import AuditReport
from captum_ext.audit.spectral import SprayResult, spray

__all__ = ["CleverHansAudit", "AuditReport", "spray", "SprayResult"]
