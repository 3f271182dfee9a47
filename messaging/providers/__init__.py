"""SMS provider adapters: Twilio (real network) and an embedded local provider."""

from messaging.providers.base import OutboundSms, ProviderReceipt, SmsProvider

__all__ = ["OutboundSms", "ProviderReceipt", "SmsProvider"]
