-- TEST-ONLY (loaded by tests/harness/prosody.py, never shipped): this server passes the
-- subscription stanzas (subscribe, subscribed, unsubscribe, unsubscribed) of its users, whether
-- their clients send them or the server does on their behalf, on to their destination as they
-- are, skipping mod_presence's outbound handling. mod_presence would update the sender's roster
-- first and drop what that roster does not justify (an "unsubscribed" for a contact that never
-- subscribed, ...). Tests use such a server as a remote peer that can send any of the four, as
-- a server with other rules, or a hostile one, could.
local jid_bare = require "util.jid".bare;

local subscription_types = { subscribe = true; subscribed = true; unsubscribe = true; unsubscribed = true };

local function pass_on(event)
	local stanza = event.stanza;
	if not subscription_types[stanza.attr.type] then return; end
	-- From the bare JID, as mod_presence sends subscription stanzas.
	stanza.attr.from = jid_bare(stanza.attr.from);
	module:send(stanza);
	return true;
end

-- Above mod_presence, which handles these events at the default priority.
module:hook("pre-presence/bare", pass_on, 10);
module:hook("pre-presence/full", pass_on, 10);
