"""Notifier: tells people about failed runs (log always, plus an optional JSON webhook)."""

import json
import logging
import urllib.request

from dagster import ConfigurableResource
from pydantic import Field

log = logging.getLogger("geoseg.notifier")


class Notifier(ConfigurableResource):
    """Sends a short message per failure; a webhook that fails is logged, never raised."""

    webhook_url: str | None = Field(default=None, description="POST a JSON {text, ...} here (Slack/Teams-style).")
    timeout_s: float = Field(default=5.0, description="Seconds to wait for the webhook before logging it as failed.")

    def notify(self, text: str, **fields) -> bool:
        """Log the message and post it to the webhook if set; True when the webhook accepted it."""
        log.error(text)
        if not self.webhook_url:
            return False
        body = json.dumps({"text": text, **fields}).encode()
        request = urllib.request.Request(self.webhook_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= response.status < 300
        except OSError as exc:
            log.warning(f"webhook {self.webhook_url} failed: {exc}")
            return False
