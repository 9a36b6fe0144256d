"""The shared journal of resumable streams: Redis Streams, so that a resume that lands
on another relay instance finds the stream (`--journal redis://...`)."""
