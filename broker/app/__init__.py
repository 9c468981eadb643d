"""The composition root of ``broker serve``: the one package that knows every implementation.

Importing the package imports nothing else: the doctor and the rotation ceremony use its
grpc-free modules without pulling in the gRPC server.
"""
