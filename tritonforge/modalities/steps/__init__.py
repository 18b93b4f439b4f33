"""The python-backend steps of the modalities' companion ensembles.

Each file runs inside Triton's python stub and imports only numpy and the library it wraps,
never tritonforge, so it is copied alone into any Triton with the python backend (the NGC
image included); the client side imports the same functions, so both encode alike.

`text_tokenizer.py` raw strings -> token arrays, the step of a `<name>_text` ensemble
`image_decode.py`   encoded image bytes -> a normalised tensor, the step of `<name>_image`
"""
