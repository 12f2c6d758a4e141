"""The request path: plan a request, forward it to its arm, relay the answer, record it.

proxy.py is the ASGI entry; plan.py decides everything before any I/O; forward.py and sse.py
talk to the replicas and the client; record.py hands the outcome to metrics, the breaker and the
event writer; ports.py is the one interface to the gateway process.
"""
