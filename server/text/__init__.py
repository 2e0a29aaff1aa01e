"""Pure text: token counts and the tokenizer seam (`tokenizer`), prompt planning (`prompt`),
sampling values (`sampling`), the thinking and speech filters (`thinking`, `speech`). No engine,
no HTTP; imports `server.base` and `server.wire`."""
