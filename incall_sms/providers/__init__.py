"""SMS provider adapters: Twilio (real network) and an embedded local provider."""

from incall_sms.providers.base import OutboundSms, ProviderReceipt, SmsProvider

__all__ = ["OutboundSms", "ProviderReceipt", "SmsProvider"]
