-- mod_roster_admin_presence: presence for contacts that the roster component adds or removes.
-- Part of http-roster-admin. Works unchanged on Prosody 0.12 and 13.
--
-- The component rewrites users' rosters through privileged roster SETs (XEP-0356). Prosody
-- then stores the item and pushes it, but exchanges no presence: two online users who become
-- contacts do not see each other until one of them sends presence again, and a removed
-- contact stays shown as available. XEP-0356 gives the component no way to send presence on
-- a user's behalf, so after changing rosters it asks this module, with an iq to the users'
-- host:
--
--   <iq type='set' from='roster.example.org' to='example.org' id='…'>
--     <update xmlns='urn:http-roster-admin:presence:0' user='alice'>
--       <added jid='bob@example.org'/>
--       <removed jid='carol@remote.example'/>
--     </update>
--   </iq>
--
-- For each available session of the user:
--   added C:   the session's current presence goes to C, then a probe from the user's bare
--              JID makes C's server answer with C's presence (per C's roster);
--   removed C: unavailable goes to C, and the user's sessions get unavailable from C.
-- An offline user gets nothing. Only the entity allowed to write every roster of this host
-- (privileged_entities, roster = "set" or "both") may ask; it gets an empty result.

local jid = require "util.jid";
local st = require "util.stanza";
local nodeprep = require "util.encodings".stringprep.nodeprep;

local NS = "urn:http-roster-admin:presence:0";
local ROSTER_WRITE = { set = true, both = true };

local hosts = prosody.hosts;
local bare_sessions = prosody.bare_sessions;
local core_post_stanza = prosody.core_post_stanza;

-- The component checks for this at connect to know that the module is loaded.
module:add_feature(NS);

-- Is origin the component that mod_privilege lets rewrite this host's rosters? The session
-- type cannot be forged by a client or a remote server, and a component session's host is
-- the component's own JID.
local function is_roster_admin(origin)
	if origin.type ~= "component" then return false; end
	local privileges = module:get_option("privileged_entities", {})[origin.host];
	return type(privileges) == "table" and ROSTER_WRITE[privileges.roster] == true;
end

-- The user's bare JID and the requested changes in document order ({ kind, contact }), or
-- nil and why the request is malformed.
local function parse_update(update)
	local username = update.attr.user and nodeprep(update.attr.user);
	if not username or username == "" then return nil, "missing or invalid 'user'"; end
	local user = username.."@"..module.host;
	local changes = {};
	for _, child in ipairs(update.tags) do
		if child.attr.xmlns ~= NS or (child.name ~= "added" and child.name ~= "removed") then
			return nil, "unexpected element <"..child.name..">";
		end
		local contact = child.attr.jid and jid.prep(child.attr.jid);
		if not contact or jid.resource(contact) then
			return nil, "not a bare JID: "..tostring(child.attr.jid);
		end
		-- Presence "to" one's own bare JID would be taken as a broadcast by mod_presence.
		if contact == user then return nil, "the user cannot be their own contact"; end
		changes[#changes + 1] = { kind = child.name, contact = contact };
	end
	return user, changes;
end

-- The sessions of a local user that have sent available presence.
local function available_sessions(bare)
	local sessions = {};
	local user = bare_sessions[bare];
	for _, session in pairs(user and user.sessions or {}) do
		if session.presence then sessions[#sessions + 1] = session; end
	end
	return sessions;
end

-- Sent as if each session had sent it itself (pre-events included, as mod_presence does when
-- it answers a probe), so that firewall rules and directed-presence tracking apply.
local function send_from_sessions(sessions, to, make_presence)
	for _, session in ipairs(sessions) do
		-- Still available? A session can be closed by what was sent before (a failed write).
		if session.presence then
			local presence = make_presence(session);
			presence.attr.from, presence.attr.to = session.full_jid, to;
			core_post_stanza(session, presence, true);
		end
	end
end

local function current_presence(session) return st.clone(session.presence); end
local function unavailable() return st.presence({ type = "unavailable" }); end

local function added(user, sessions, contact)
	send_from_sessions(sessions, contact, current_presence);
	-- Like a login probe: the contact's server answers only if its roster lets the user see it.
	module:send(st.presence({ from = user, to = contact, type = "probe" }));
	module:log("debug", "Sent presence of %d session(s) of %s to %s, and a probe",
		#sessions, user, contact);
end

local function removed(user, sessions, contact)
	send_from_sessions(sessions, contact, unavailable);
	local _, contact_host = jid.split(contact);
	local local_host = hosts[contact_host];
	local senders = {};
	if local_host and local_host.type == "local" then
		-- A user of this server: each resource the user may have seen goes away.
		for _, session in ipairs(available_sessions(contact)) do
			senders[#senders + 1] = session.full_jid;
		end
	else
		-- Remote (or a component): we do not know its resources; the bare JID covers them all.
		senders[1] = contact;
	end
	for _, sender in ipairs(senders) do
		module:send(st.presence({ from = sender, to = user, type = "unavailable" }));
	end
	module:log("debug", "Sent unavailable of %d session(s) of %s to %s, and of %d from it",
		#sessions, user, contact, #senders);
end

module:hook("iq-set/host/"..NS..":update", function(event)
	local origin, stanza = event.origin, event.stanza;
	if not is_roster_admin(origin) then
		module:log("warn", "Refused a presence update from %s (%s session): not the component",
			tostring(stanza.attr.from), tostring(origin.type));
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	local user, changes = parse_update(stanza.tags[1]);
	if not user then
		module:log("warn", "Malformed presence update from %s: %s", stanza.attr.from, changes);
		origin.send(st.error_reply(stanza, "modify", "bad-request", changes));
		return true;
	end
	local counts = { added = 0, removed = 0 };
	for _, change in ipairs(changes) do counts[change.kind] = counts[change.kind] + 1; end
	local sessions = available_sessions(user);
	if #sessions == 0 then
		-- Nobody to tell, and the contacts already see the user as offline.
		module:log("info", "Presence update for %s: %d added, %d removed; offline, nothing sent",
			user, counts.added, counts.removed);
	else
		for _, change in ipairs(changes) do
			if change.kind == "added" then
				added(user, sessions, change.contact);
			else
				removed(user, sessions, change.contact);
			end
		end
		module:log("info", "Presence update for %s: %d added, %d removed; sent for %d session(s)",
			user, counts.added, counts.removed, #sessions);
	end
	origin.send(st.reply(stanza));
	return true;
end);
