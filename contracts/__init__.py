"""The message contract of ForgeSyte Stream, as asyncapi.yaml declares it.

`contracts.asyncapi_doc` loads the document and checks server messages against
it; `contracts/node` validates the document itself with the official AsyncAPI parser.
"""
