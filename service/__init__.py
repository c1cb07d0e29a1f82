"""A stateful, OpenAI-compatible conversation store in front of OpenRouter's stateless Responses API."""

__version__ = "0.1.0"
