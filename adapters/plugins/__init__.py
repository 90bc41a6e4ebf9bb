"""Computer-vision plugins: each turns a decoded frame into JSON-ready detections.

They live in adapters because they are the only code allowed to touch OpenCV,
numpy, ONNX Runtime and RapidOCR; the application sees them only through the
Plugin and Tool ports.
"""
