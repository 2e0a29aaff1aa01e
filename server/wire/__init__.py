"""The gateway's wire: the request schema (`schemas`), the bytes of every reply chunk
(`chunks`), auth codes (`auth`). Pure values; imports only `server.base`."""
