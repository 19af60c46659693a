"""The edge gateway: browser pages and phone lines reach the agent over WebSockets."""
