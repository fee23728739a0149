"""What the runtime server, the gateway and the evals client share on the wire: OpenAI's request and error
types, SSE framing, and the HTTP guards every process puts in front of its handlers. Light on purpose:
pydantic and Starlette only, never torch."""
