"""The pool monitor (beat task); filled in by the balancer work."""
