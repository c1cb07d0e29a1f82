"""What the application owns for its lifetime, built by the lifespan and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.node import ClusterNode
from service.config import Settings
from service.keys.service import KeyAuthenticator
from service.limits.policy import Limits
from service.responses.runner import TurnRunner
from service.responses.turn import TurnContext
from service.upstream.client import OpenRouterClient


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    upstream: OpenRouterClient
    authenticator: KeyAuthenticator
    turn_context: TurnContext  # what every turn needs; owns the outcomes waiting for the database
    turns: TurnRunner  # streamed and background turns, which outlive the request that started them
    limits: Limits  # request rates and turns in flight, per tenant and per key
    cluster: ClusterNode  # heartbeat and events shared with the other processes of the service
