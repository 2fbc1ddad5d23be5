"""Inference on ONNX Runtime: host-owned sessions, the watchdog, the script-facing model API."""
