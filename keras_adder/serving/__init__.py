"""What is served: the SavedModel and its signature, BatchNorm folding, warm-up records,
promotion, TF Serving REST bodies, LiteRT/ONNX files, the format dispatch and the
Gradio app."""
