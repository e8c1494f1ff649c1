"""The roles of an account, and which of them are approved (may run pumps and be told things)."""

ROLES = ("pending", "user", "admin")
APPROVED_ROLES = ("user", "admin")
PENDING_MESSAGE = "Your account is waiting for an administrator's approval."


def approved(role: str | None) -> bool:
    return role in APPROVED_ROLES
