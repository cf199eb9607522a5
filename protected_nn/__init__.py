"""protected_nn: compile an ONNX CNN into a CKKS plan, encrypt every trained parameter,
evaluate on encrypted frames, decrypt on the owner side.

Layout of the package (follow a model from ONNX to a decrypted output):
  frontend/   ONNX -> IR (one small module per op family, op table keyed by ONNX name)
  ir.py       the layer graph every later stage works on (flat vectors, sparse linear maps)
  compiler/   IR -> Plan: slot layouts, diagonals + baby-step/giant-step, levels, rotation steps
  ckks/       CKKS parameters at 128-bit security and the guarded Pyfhel wrapper (the only Pyfhel import)
  runtime/    encrypt parameters (owner), evaluate a Plan (gateway), decrypt/decode (owner)
  api.py      the facade both services use: protect(), EdgeModel, OwnerModel
  bundle.py   signed, versioned deployment archive; envelope.py the MQTT message format
"""
