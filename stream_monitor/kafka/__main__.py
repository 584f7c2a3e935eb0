from .broker import serve_forever

serve_forever()
