-- TEST-ONLY (loaded by tests/harness/prosody.py, never shipped): this server's
-- mod_roster_admin_presence behaves as a version without held roster requests did: the
-- component's request to hold them is not understood, so users' roster requests stay
-- delegated to the component (XEP-0355), which answers them itself.
local st = require "util.stanza";

-- Above the shipped module's handler (the default priority).
module:hook("iq-set/host/urn:http-roster-admin:presence:0:hold", function(event)
	event.origin.send(st.error_reply(event.stanza, "cancel", "feature-not-implemented"));
	return true;
end, 10);
