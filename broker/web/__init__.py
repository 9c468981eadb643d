"""The broker's HTTPS listener: request_uri hosting and the redirect_uri callback."""
