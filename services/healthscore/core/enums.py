"""Every enumeration of the wire contract and the read model, defined once.

The SQL CHECK constraints in schema/migrations list the same values; a test
(tests/integration/test_schema_enums.py) reads the constraints back from the
database and compares them with these classes, so the two cannot drift.
"""

from enum import StrEnum


class UsageType(StrEnum):
    LOGIN = "login"
    FEATURE_USED = "feature_used"
    ONBOARDING_COMPLETED = "onboarding_completed"
    PROFILE_COMPLETED = "profile_completed"
    CLIENT_ADDED = "client_added"
    FORM_CREATED = "form_created"
    FORM_SUBMITTED = "form_submitted"
    JOURNEY_LAUNCHED = "journey_launched"
    EMAIL_SENT = "email_sent"
    PAYMENT_RECEIVED = "payment_received"
    CONTRACT_SIGNED = "contract_signed"
    INTEGRATION_CONNECTED = "integration_connected"
    TEAM_MEMBER_INVITED = "team_member_invited"
    WEDDING_COMPLETED = "wedding_completed"
    REVIEW_RECEIVED = "review_received"
    REFERRAL_MADE = "referral_made"
    SUBSCRIPTION_UPGRADED = "subscription_upgraded"
    SUBSCRIPTION_DOWNGRADED = "subscription_downgraded"
    SEAT_REMOVED = "seat_removed"
    DATA_EXPORT_REQUESTED = "data_export_requested"


class SupportAction(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"
    FOLLOW_UP_SCHEDULED = "follow_up_scheduled"


class InteractionType(StrEnum):
    ONBOARDING_CALL = "onboarding_call"
    TRAINING_SESSION = "training_session"
    CHECK_IN = "check_in"
    QUARTERLY_BUSINESS_REVIEW = "quarterly_business_review"
    RENEWAL_DISCUSSION = "renewal_discussion"
    UPSELL_DISCUSSION = "upsell_discussion"
    TECHNICAL_SUPPORT = "technical_support"
    BUG_REPORT = "bug_report"
    FEATURE_REQUEST = "feature_request"
    BILLING_INQUIRY = "billing_inquiry"
    COMPLAINT = "complaint"
    ESCALATION = "escalation"
    CANCELLATION_REQUEST = "cancellation_request"
    CHURN_INTERVENTION = "churn_intervention"
    FEEDBACK_SURVEY = "feedback_survey"


class Channel(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    CHAT = "chat"
    VIDEO = "video"
    IN_APP = "in_app"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Sentiment(StrEnum):
    VERY_NEGATIVE = "very_negative"
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"
    VERY_POSITIVE = "very_positive"


class Outcome(StrEnum):
    RESOLVED = "resolved"
    ESCALATED = "escalated"
    FOLLOW_UP_REQUIRED = "follow_up_required"
    NO_ACTION = "no_action"
    RETAINED = "retained"
    CHURNED = "churned"


class InteractionStatus(StrEnum):
    """Stored status of a support interaction (derived from actions)."""

    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"


class MilestoneType(StrEnum):
    ONBOARDING_COMPLETED = "onboarding_completed"
    PROFILE_COMPLETED = "profile_completed"
    FIRST_CLIENT_ADDED = "first_client_added"
    CLIENTS_10 = "clients_10"
    CLIENTS_50 = "clients_50"
    FIRST_FORM_CREATED = "first_form_created"
    FIRST_FORM_SUBMITTED = "first_form_submitted"
    FIRST_JOURNEY_LAUNCHED = "first_journey_launched"
    FIRST_EMAIL_SENT = "first_email_sent"
    FIRST_PAYMENT_RECEIVED = "first_payment_received"
    FIRST_CONTRACT_SIGNED = "first_contract_signed"
    INTEGRATION_CONNECTED = "integration_connected"
    TEAM_MEMBER_INVITED = "team_member_invited"
    WEDDINGS_COMPLETED_10 = "weddings_completed_10"
    FIRST_REVIEW_RECEIVED = "first_review_received"
    FIRST_REFERRAL = "first_referral"
    SUBSCRIPTION_UPGRADED = "subscription_upgraded"


class RewardStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DECLINED = "declined"


class HealthStatus(StrEnum):
    """Band of a 0-100 health score; edges live in SQL `health_band()`."""

    EXCELLENT = "excellent"
    GOOD = "good"
    AT_RISK = "at_risk"
    CRITICAL = "critical"


class RiskLevel(StrEnum):
    """Level of a churn probability; edges live in SQL `risk_level_for()`."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AlertKind(StrEnum):
    RISK_RAISED = "risk_raised"
    RISK_ESCALATED = "risk_escalated"
    RECOVERED = "recovered"


# the docstring is the contract's description of the field (JSON Schema); shadow_alerts
# stores a candidate model's triggers too
class AlertTrigger(StrEnum):
    """Why an alert fired (a field of the alert only; no table stores it)."""

    PROBABILITY_THRESHOLD = "probability_threshold"  # churn probability entered the alert range
    SCORE_DROP = "score_drop"  # the score fell sharply within 7 days
    ESCALATION_STEP = "escalation_step"  # the risk level stepped up within an episode
    RECOVERY = "recovery"  # the probability fell back below the exit threshold


# the docstring is the contract's description of the field (JSON Schema)
class NoPathReason(StrEnum):
    """Why an alert's path to healthy names no action (a field of the alert only)."""

    OUT_OF_RISK = "out_of_risk"  # the churn probability is already below the recovery threshold
    HELD_BY_CEILING = "held_by_ceiling"  # a signal only time heals holds the score under a ceiling
    TIME_HEALS_ONLY = "time_heals_only"  # the risk is in signals no action undoes, only time


class AlertOutcome(StrEnum):
    """What became of an alert episode (healthscore.core.quality: within 60 days)."""

    RETAINED = "retained"
    CHURNED = "churned"


class UserRole(StrEnum):
    ADMIN = "admin"
    SUPPORT = "support"
    MEMBER = "member"


RISK_LEVEL_ORDER: tuple[RiskLevel, ...] = (
    RiskLevel.LOW,
    RiskLevel.MEDIUM,
    RiskLevel.HIGH,
    RiskLevel.CRITICAL,
)


class RewardType(StrEnum):
    """What a milestone grants, when the model config grants anything."""

    BADGE = "badge"
    DISCOUNT = "discount"
    ACCOUNT_CREDIT = "account_credit"
    FEATURE_UNLOCK = "feature_unlock"


class HistoryCause(StrEnum):
    """Why a score was recomputed."""

    EVENTS = "events"
    SWEEP = "sweep"
