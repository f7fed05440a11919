-- mod_roster_admin_presence: presence, pending subscription requests, delegated clients'
-- roster pushes, roster reads and writes a user at a time, and users' roster requests held
-- until the user is synced, for the roster component.
-- Part of http-roster-admin. Works unchanged on Prosody 0.12 and 13.
--
-- The component owns every roster of this host. XEP-0356 privileged roster IQs let it read
-- and write them, one item per IQ; what they cannot do, or do too expensively, it asks this
-- module for, with iqs to the users' host in the namespace below (and without the module it
-- falls back to privileged IQs alone).
--
-- 1. Presence for contacts it added or removed. Prosody stores and pushes the item but
-- exchanges no presence: two online users who become contacts do not see each other until
-- one of them sends presence again, and a removed contact stays shown as available.
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
-- An offline user gets nothing. Nor does a contact of this server that is offline (or has
-- no account): it would drop the presence, and its next login probes and broadcasts per its
-- roster anyway; at scale this routing was most of what a sync cost the server. The answer
-- is an empty result.
--
-- 2. Pending inbound subscription requests: "X wants to subscribe", kept in the roster's
-- metadata (roster[false].pending) until the user answers, offered again to each session
-- that logs in, and never shown in roster GETs. Since the web app decides every
-- subscription, the component lists them and clears them as drift.
--
--   <iq type='get' to='example.org' id='…'>
--     <pending xmlns='urn:http-roster-admin:presence:0' user='alice'/>
--   </iq>
--   answer: <pending xmlns='…' user='alice'><item jid='eve@remote.example'/>…</pending>,
--           items sorted by JID, none for a user without requests or without an account.
--
--   <iq type='set' to='example.org' id='…'>
--     <pending xmlns='urn:http-roster-admin:presence:0' user='alice'>
--       <item jid='eve@remote.example'/>
--     </pending>
--   </iq>
--   answer: an empty result, once the listed requests are removed and the roster saved
--           (listed JIDs that are not pending are ignored; nothing is stored for a user
--           without an account).
--
-- Both go through Prosody's roster manager, so an online user's live roster is the one read
-- and changed: a session that logs in afterwards is not offered the cleared requests.

-- 3. Roster pushes to clients whose roster requests the server delegates to the component
-- (XEP-0355). mod_roster never saw their requests, so Prosody pushes them nothing itself;
-- XEP-0356 would take one privileged iq per push per client, each relayed both ways (at
-- scale, most of what a refresh of online users cost the server). The component sends a
-- user's pushes in one request instead, and this module sends them as mod_roster sends its
-- own: an iq set straight to each session, its result dropped.
--
--   <iq type='set' to='example.org' id='…'>
--     <push xmlns='urn:http-roster-admin:presence:0' user='alice'>
--       <session jid='alice@example.org/phone'/>
--       <query xmlns='jabber:iq:roster' ver='…'><item jid='bob@example.org' …/></query>
--       <query xmlns='jabber:iq:roster' ver='…'><item jid='eve@example.org'
--         subscription='remove'/></query>
--     </push>
--   </iq>
--
-- Each listed session gets each query, in order. answer: <push xmlns='…' user='alice'> with a
-- <gone jid='…'/> for each listed session that no longer exists (nothing is sent to it).
-- A session of another user, or a query without exactly one item, is malformed: nothing is
-- sent at all.
--
-- Only the entity allowed to write every roster of this host (privileged_entities,
-- roster = "set" or "both") may ask: others get forbidden. A malformed request (no valid
-- 'user', an unknown child, an item without a bare JID) gets bad-request and changes nothing.
--
-- 4. A wider read of the component's stream. Prosody reads every connection alike, 4 KB per
-- turn of its loop (network_default_read_size), but the component's carries every user's
-- roster traffic: in a storm of logins its answers to roster requests trickled in a couple per
-- turn, between the initial presence of each user already answered, and logins took twice as
-- long as when Prosody answers from its own store. From the first iq the component sends to
-- this host or its users, up to roster_admin_component_read_size bytes (default 1 MiB) of
-- its stream are read per turn; the component bounds what it has in flight itself.
--
-- 5. A user's roster items written in one request, and saved once. A privileged roster SET
-- (XEP-0356) carries one item, and Prosody loads and saves the user's whole roster for each:
-- an initial sync of 20 contacts saved the file 20 times (measured: 663 items/s against
-- 20,000 items/s this way; a change of 2 items per user 2.6 times the server's CPU).
--
--   <iq type='set' to='example.org' id='…'>
--     <write xmlns='urn:http-roster-admin:presence:0' user='alice'>
--       <query xmlns='jabber:iq:roster'>
--         <item jid='bob@example.org' name='Bob' subscription='both'><group>Friends</group></item>
--         <item jid='carol@example.org' subscription='remove'/>
--       </query>
--     </write>
--   </iq>
--
-- Each item becomes exactly what it says (no pending "ask" stays); subscription='remove'
-- removes it. The answer, once the roster is saved: <write xmlns='…' user='alice'/> with a
-- <refused jid='…'>why</refused> for each item not written (not a bare JID, the user's own,
-- an unknown subscription); the others are. A user without an account: item-not-found,
-- nothing stored. A save that fails: internal-server-error, nothing changed. Sessions that
-- asked Prosody for their roster get a push per item, each with its own roster version, as
-- after that many SETs. Then, before the answer, the presence the write implies goes out as
-- for an update (section 1): a contact that became "both" counts as added, a removed one
-- that had a subscription as removed. No update request is needed after a write.
--
-- 6. A user's roster and pending requests read in one request (a privileged GET and a pending
-- query are two, each loading the roster of a user who is offline):
--
--   <iq type='get' to='example.org' id='…'><roster xmlns='…' user='alice'/></iq>
--   answer: <roster xmlns='…' user='alice'><query xmlns='jabber:iq:roster'><item …/>…</query>
--           <pending><item jid='eve@remote.example'/>…</pending></roster>, items and
--           requests sorted by JID; item-not-found for a user without an account.
--
-- 7. Users' roster requests held while the component syncs the user, then answered by Prosody
-- from its store. Delegated (XEP-0355), each answer is the whole roster, built by the
-- component, parsed and forwarded by Prosody: at a login storm most of what a login cost
-- the server beyond answering itself. Once the component has asked for it:
--
--   <iq type='set' to='example.org' id='…'><hold xmlns='…'><batches/></hold></iq>
--   (answer: empty result; a plain <hold/>, from a component older than batches, is refused)
--
-- a client's roster get (type get, to its own account) is held, and the component is told,
-- in one message for up to 32 requests held since the last (an iq and its answer per login
-- cost Prosody more than the login's hold), sent once 32 are held or at Prosody's next turn
-- of timers:
--
--   <message from='example.org' to='roster.example.org'>
--     <sync xmlns='…'><user name='alice' session='alice@example.org/phone' ref='…'/>…</sync>
--   </message>
--
-- It says which it has synced, as they finish, as many at once as finished together:
--
--   <message from='roster.example.org' to='example.org'>
--     <synced xmlns='…'><user ref='…'/><user ref='…' error='internal-server-error'/>…</synced>
--   </message>
--
-- (a user with 'error': the component could not sync them). Each synced request is released
-- to mod_roster, which answers from the roster, now in line, with its own versions
-- (XEP-0237), and pushes later changes to the session itself. Without word within
-- roster_admin_sync_timeout seconds (default 30), or once the component's session is gone,
-- the request is answered from the store as it is: the last good roster. Roster sets are not
-- held (mod_delegation or the firewall rules refuse them). The component asks again at each
-- connection.
--
-- A client answered while other requests are still held is not read from until none are
-- held and every answer has been written out (mod_c2s's c2s-ondrain), for at most
-- roster_admin_answered_pause seconds (default 1; 0: never; an answer a client does not read
-- is waited for as long). Answering from its store, Prosody answers each request as it reads
-- it, before the presence the client sends once answered. Held, requests read earlier waited
-- behind that presence: in a storm of logins each answered client's presence is routed (to
-- every contact, probes answered) while Prosody reads one ready connection per turn, so each
-- round of them grew, and the component's word on the users still held was read once a
-- round. Once all are read again, their presence is routed one by one; Prosody 13 runs timers
-- between batches of ready connections, not only when none is ready, so an answer not yet
-- written out waited behind up to 256 of them (over a second in a storm of 500 logins). A
-- BOSH session's connection is its latest HTTP request's, not its stream: it is never
-- paused.

local jid = require "util.jid";
local st = require "util.stanza";
local nodeprep = require "util.encodings".stringprep.nodeprep;
local rostermanager = require "core.rostermanager";
local user_exists = require "core.usermanager".user_exists;
local new_id = require "util.id".short;

local NS = "urn:http-roster-admin:presence:0";
local ROSTER_NS = "jabber:iq:roster";
local ROSTER_WRITE = { set = true, both = true };

local hosts = prosody.hosts;
local bare_sessions = prosody.bare_sessions;
local full_sessions = prosody.full_sessions;
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

local COMPONENT_READ_SIZE = module:get_option_number("roster_admin_component_read_size",
	1024 * 1024);

local function widen_component_reads(event)
	local origin = event.origin;
	if origin.type ~= "component" or origin.roster_admin_reads_widened then return; end
	origin.roster_admin_reads_widened = true;
	local conn = origin.conn;
	if is_roster_admin(origin) and conn and conn.set_mode then
		conn:set_mode(COMPONENT_READ_SIZE);
		module:log("info", "Reading up to %s bytes per turn of the stream of %s",
			tostring(conn.read_size), origin.host);
	end
end

-- Before any handler that could end the event; never ends it.
module:hook("iq/host", widen_component_reads, 2^32 + 1);
module:hook("iq/bare", widen_component_reads, 2^32 + 1);

-- The request's 'user' as a username of this host, or nil and why it is malformed.
local function parse_user(request)
	local username = request.attr.user and nodeprep(request.attr.user);
	if not username or username == "" then return nil, "missing or invalid 'user'"; end
	return username;
end

-- A child's 'jid' as a bare JID, or nil and why it is malformed.
local function parse_bare_jid(child)
	local contact = child.attr.jid and jid.prep(child.attr.jid);
	if not contact or jid.resource(contact) then
		return nil, "not a bare JID: "..tostring(child.attr.jid);
	end
	return contact;
end

-- The user's bare JID and the requested changes in document order ({ kind, contact }), or
-- nil and why the request is malformed.
local function parse_update(update)
	local username, err = parse_user(update);
	if not username then return nil, err; end
	local user = username.."@"..module.host;
	local changes = {};
	for _, child in ipairs(update.tags) do
		if child.attr.xmlns ~= NS or (child.name ~= "added" and child.name ~= "removed") then
			return nil, "unexpected element <"..child.name..">";
		end
		local contact, jid_err = parse_bare_jid(child);
		if not contact then return nil, jid_err; end
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

-- Is the contact a user of this server (or one with no account) that no session of is
-- available? Then presence for it is dropped on arrival, and it tells nobody anything.
local function offline_here(contact)
	local _, contact_host = jid.split(contact);
	local local_host = hosts[contact_host];
	return local_host ~= nil and local_host.type == "local" and #available_sessions(contact) == 0;
end

local function added(user, sessions, contact)
	if offline_here(contact) then
		module:log("debug", "Not sending available of %s to %s: offline", user, contact);
		return;
	end
	send_from_sessions(sessions, contact, current_presence);
	-- Like a login probe: the contact's server answers only if its roster lets the user see it.
	module:send(st.presence({ from = user, to = contact, type = "probe" }));
	module:log("debug", "Sent presence of %d session(s) of %s to %s, and a probe",
		#sessions, user, contact);
end

local function removed(user, sessions, contact)
	if offline_here(contact) then
		module:log("debug", "Not sending unavailable of %s to %s: offline", user, contact);
		return;
	end
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

-- Answers forbidden and returns true unless the request comes from the component.
local function refused(event, what)
	local origin, stanza = event.origin, event.stanza;
	if is_roster_admin(origin) then return false; end
	module:log("warn", "Refused %s from %s (%s session): not the component",
		what, tostring(stanza.attr.from), tostring(origin.type));
	origin.send(st.error_reply(stanza, "auth", "forbidden"));
	return true;
end

-- Answers bad-request (why: the parser's reason).
local function malformed(event, what, why)
	module:log("warn", "Malformed %s from %s: %s", what, event.stanza.attr.from, why);
	event.origin.send(st.error_reply(event.stanza, "modify", "bad-request", why));
end

-- Hooks the component's iq of this type ("get" or "set") whose payload is <name xmlns=NS>.
-- Anyone else gets forbidden; a payload that parse(payload) finds malformed (nil, why) gets
-- bad-request; otherwise handle(event, ...) gets what parse returned, and answers.
local function on_request(iq_type, name, what, parse, handle)
	module:hook("iq-"..iq_type.."/host/"..NS..":"..name, function(event)
		if refused(event, what) then return true; end
		local parsed = table.pack(parse(event.stanza.tags[1]));
		if parsed[1] == nil then
			malformed(event, what, parsed[2]);
		else
			handle(event, table.unpack(parsed, 1, parsed.n));
		end
		return true;
	end);
end

-- Sends the presence that changes ({ kind = "added" | "removed", contact }) of the user's
-- roster imply, as section 1 says.
local function announce(user, changes)
	local counts = { added = 0, removed = 0 };
	for _, change in ipairs(changes) do counts[change.kind] = counts[change.kind] + 1; end
	local sessions = available_sessions(user);
	if #sessions == 0 then
		-- Nobody to tell, and the contacts already see the user as offline.
		module:log("debug", "Presence update for %s: %d added, %d removed; offline, nothing sent",
			user, counts.added, counts.removed);
	else
		for _, change in ipairs(changes) do
			if change.kind == "added" then
				added(user, sessions, change.contact);
			else
				removed(user, sessions, change.contact);
			end
		end
		module:log("debug", "Presence update for %s: %d added, %d removed; sent for %d session(s)",
			user, counts.added, counts.removed, #sessions);
	end
end

on_request("set", "update", "presence update", parse_update, function(event, user, changes)
	announce(user, changes);
	event.origin.send(st.reply(event.stanza));
end);

-- Pending inbound subscription requests.

-- The username and the listed JIDs (in document order), or nil and why the request is
-- malformed. A get lists nothing.
local function parse_pending(request, items_allowed)
	local username, err = parse_user(request);
	if not username then return nil, err; end
	local contacts = {};
	for _, child in ipairs(request.tags) do
		if not items_allowed or child.attr.xmlns ~= NS or child.name ~= "item" then
			return nil, "unexpected element <"..child.name..">";
		end
		local contact, jid_err = parse_bare_jid(child);
		if not contact then return nil, jid_err; end
		contacts[#contacts + 1] = contact;
	end
	return username, contacts;
end

-- The user's roster: for an online user the live one that their sessions use, otherwise the
-- stored one (through the roster manager's cache). nil for a user without an account, so that
-- nothing is loaded, cached or saved for them; nil and an error if it cannot be read.
local function roster_of(username)
	if not user_exists(username, module.host) then return nil; end
	local roster, err = rostermanager.load_roster(username, module.host);
	-- A roster that failed to load stays cached as "broken", without the error.
	err = err or roster[false].broken;
	if err then return nil, err; end
	return roster;
end

local function cannot_read(event, username, err)
	module:log("error", "Cannot read the roster of %s@%s: %s", username, module.host,
		tostring(err));
	event.origin.send(st.error_reply(event.stanza, "wait", "internal-server-error"));
end

-- The roster of a user with an account, or nil once the request is answered with the error
-- (no account: item-not-found).
local function existing_roster(event, username)
	local roster, err = roster_of(username);
	if err then
		cannot_read(event, username, err);
	elseif not roster then
		event.origin.send(st.error_reply(event.stanza, "cancel", "item-not-found",
			"No such user"));
	end
	return not err and roster or nil;
end

local function parse_pending_get(request) return parse_pending(request, false); end
local function parse_pending_set(request) return parse_pending(request, true); end

on_request("get", "pending", "pending requests query", parse_pending_get, function(event, username)
	local origin, stanza = event.origin, event.stanza;
	local roster, load_err = roster_of(username);
	if load_err then cannot_read(event, username, load_err); return; end
	local requesters = {};
	for requester in pairs(roster and roster[false].pending or {}) do
		requesters[#requesters + 1] = requester;
	end
	table.sort(requesters);
	local reply = st.reply(stanza):tag("pending", { xmlns = NS, user = username });
	for _, requester in ipairs(requesters) do
		reply:tag("item", { jid = requester }):up();
	end
	module:log("debug", "Pending subscription requests to %s@%s: %d%s", username, module.host,
		#requesters, roster and "" or " (no such user)");
	origin.send(reply);
end);

local function clear_pending(event, username, contacts)
	local origin, stanza = event.origin, event.stanza;
	local roster, load_err = roster_of(username);
	if load_err then cannot_read(event, username, load_err); return; end
	local cleared = {}; -- { contact, request } of each request removed
	local pending = roster and roster[false].pending or {};
	for _, contact in ipairs(contacts) do
		if pending[contact] ~= nil then
			cleared[#cleared + 1] = { contact = contact, request = pending[contact] };
			pending[contact] = nil;
		end
	end
	if #cleared > 0 then
		-- With a JID, save_roster writes the roster's metadata (which holds the pending
		-- requests) and that one contact's item, unchanged here.
		local saved, save_err = rostermanager.save_roster(username, module.host, roster,
			cleared[1].contact);
		if not saved then
			for _, entry in ipairs(cleared) do pending[entry.contact] = entry.request; end
			module:log("error", "Cannot save the roster of %s@%s: %s", username, module.host,
				tostring(save_err));
			origin.send(st.error_reply(stanza, "wait", "internal-server-error"));
			return;
		end
	end
	module:log("info", "Cleared %d pending subscription request(s) to %s@%s (%d listed)%s",
		#cleared, username, module.host, #contacts, roster and "" or "; no such user");
	origin.send(st.reply(stanza));
end

on_request("set", "pending", "request to clear pending requests", parse_pending_set,
	clear_pending);

-- Roster pushes for delegated clients.

-- The username, the listed sessions' full JIDs and the queries (both in document order), or
-- nil and why the request is malformed.
local function parse_push(push)
	local username, err = parse_user(push);
	if not username then return nil, err; end
	local user = username.."@"..module.host;
	local targets, queries = {}, {};
	for _, child in ipairs(push.tags) do
		if child.name == "session" and child.attr.xmlns == NS then
			local target = child.attr.jid and jid.prep(child.attr.jid);
			if not target or jid.bare(target) ~= user or not jid.resource(target) then
				return nil, "not a session of "..user..": "..tostring(child.attr.jid);
			end
			targets[#targets + 1] = target;
		elseif child.name == "query" and child.attr.xmlns == ROSTER_NS then
			-- RFC 6121: a roster push carries exactly one item.
			if #child.tags ~= 1 or child.tags[1].name ~= "item" then
				return nil, "a pushed query must hold exactly one <item>";
			end
			queries[#queries + 1] = child;
		else
			return nil, "unexpected element <"..child.name..">";
		end
	end
	return username, targets, queries;
end

on_request("set", "push", "roster pushes", parse_push, function(event, username, targets, queries)
	local reply = st.reply(event.stanza):tag("push", { xmlns = NS, user = username });
	local reached = 0;
	for _, target in ipairs(targets) do
		local session = full_sessions[target];
		if session then
			reached = reached + 1;
			for _, query in ipairs(queries) do
				session.send(st.iq({ type = "set", id = new_id() }):add_child(st.clone(query)));
			end
		else
			reply:tag("gone", { jid = target }):up();
		end
	end
	module:log("debug", "Sent %d roster push(es) to %d of %d session(s) of %s@%s", #queries,
		reached, #targets, username, module.host);
	event.origin.send(reply);
end);

-- Roster writes: a user's changed items in one request.

local SUBSCRIPTIONS = { none = true, to = true, from = true, both = true };

-- The username and the query's items in document order, each { contact, item } (item nil
-- for a removal) or { refused = JID as sent, why }, or nil and why the request is malformed.
local function parse_write(write)
	local username, err = parse_user(write);
	if not username then return nil, err; end
	local user = username.."@"..module.host;
	local query = write.tags[1];
	if #write.tags ~= 1 or query.name ~= "query" or query.attr.xmlns ~= ROSTER_NS then
		return nil, "expected exactly one <query xmlns='"..ROSTER_NS.."'>";
	end
	local changes = {};
	for _, child in ipairs(query.tags) do
		if child.name ~= "item" or child.attr.xmlns ~= ROSTER_NS then
			return nil, "unexpected element <"..child.name..">";
		end
		local contact = child.attr.jid and jid.prep(child.attr.jid);
		local subscription = child.attr.subscription;
		local why;
		if not contact or jid.resource(contact) then
			why = "not a bare JID";
		elseif contact == user then
			why = "the user's own JID";
		elseif subscription ~= "remove" and not SUBSCRIPTIONS[subscription] then
			why = "subscription "..tostring(subscription);
		end
		if why then
			changes[#changes + 1] = { refused = tostring(child.attr.jid), why = why };
		elseif subscription == "remove" then
			changes[#changes + 1] = { contact = contact };
		else
			local groups = {};
			for group in child:childtags("group", ROSTER_NS) do
				local name = group:get_text();
				if name ~= "" then groups[name] = true; end
			end
			-- Exactly as the component says: no pending outgoing request ("ask") stays.
			changes[#changes + 1] = { contact = contact, item = {
				subscription = subscription, name = child.attr.name, groups = groups } };
		end
	end
	return username, changes;
end

-- The interested sessions (those that asked Prosody for the roster) get one push per item,
-- each with the version of the roster after it, as if each had been saved on its own.
local function push_each(username, roster, contacts, first_version)
	local metadata = roster[false];
	local saved_version = metadata.version;
	for k, contact in ipairs(contacts) do
		if first_version then metadata.version = first_version + k - 1; end
		rostermanager.roster_push(username, module.host, contact);
	end
	metadata.version = saved_version;
end

-- The presence changes a write made, in the order of ``contacts``: a contact that became
-- "both" was added, one removed that had any subscription was removed (what an update
-- request from the component would list).
local function presence_changes(roster, before, contacts)
	local changes = {};
	for _, contact in ipairs(contacts) do
		local old, new = before[contact], roster[contact];
		local was = old and old.subscription or "none";
		if new and new.subscription == "both" and was ~= "both" then
			changes[#changes + 1] = { kind = "added", contact = contact };
		elseif not new and was ~= "none" then
			changes[#changes + 1] = { kind = "removed", contact = contact };
		end
	end
	return changes;
end

on_request("set", "write", "roster write", parse_write, function(event, username, changes)
	local origin, stanza = event.origin, event.stanza;
	local roster = existing_roster(event, username);
	if not roster then return; end
	local reply = st.reply(stanza):tag("write", { xmlns = NS, user = username });
	local before, contacts = {}, {}; -- each changed contact's item before (false: none)
	local refusals = 0;
	for _, change in ipairs(changes) do
		if change.refused then
			refusals = refusals + 1;
			reply:tag("refused", { jid = change.refused }):text(change.why):up();
		else
			local contact = change.contact;
			if before[contact] == nil then
				before[contact] = roster[contact] or false;
				contacts[#contacts + 1] = contact;
			end
			roster[contact] = change.item;
		end
	end
	if #contacts > 0 then
		local metadata = roster[false];
		local version = metadata.version;
		local first_version;
		if version ~= true then
			-- save_roster counts one; each item counts one, as a SET of its own would.
			first_version = (tonumber(version) or 0) + 1;
			metadata.version = first_version + #contacts - 2;
		end
		local saved, save_err = rostermanager.save_roster(username, module.host, roster);
		if not saved then
			for contact, item in pairs(before) do roster[contact] = item or nil; end
			metadata.version = version;
			module:log("error", "Cannot save the roster of %s@%s: %s", username, module.host,
				tostring(save_err));
			origin.send(st.error_reply(stanza, "wait", "internal-server-error"));
			return;
		end
		push_each(username, roster, contacts, first_version);
		announce(username.."@"..module.host, presence_changes(roster, before, contacts));
	end
	module:log("debug", "Wrote %d item(s) of %s@%s in one save, refused %d", #contacts,
		username, module.host, refusals);
	origin.send(reply);
end);

-- Roster reads: the items and the pending requests in one answer.

-- The username, or nil and why the request is malformed.
local function parse_read(request)
	if #request.tags > 0 then return nil, "unexpected element <"..request.tags[1].name..">"; end
	return parse_user(request);
end

on_request("get", "roster", "roster read", parse_read, function(event, username)
	local roster = existing_roster(event, username);
	if not roster then return; end
	local contacts, requesters = {}, {};
	for contact in pairs(roster) do
		if type(contact) == "string" then contacts[#contacts + 1] = contact; end
	end
	for requester in pairs(roster[false].pending or {}) do
		requesters[#requesters + 1] = requester;
	end
	table.sort(contacts);
	table.sort(requesters);
	local reply = st.reply(event.stanza):tag("roster", { xmlns = NS, user = username })
		:tag("query", { xmlns = ROSTER_NS });
	for _, contact in ipairs(contacts) do
		local item = roster[contact];
		reply:tag("item", { jid = contact, name = item.name, subscription = item.subscription,
			ask = item.ask });
		for group in pairs(item.groups or {}) do reply:tag("group"):text(group):up(); end
		reply:up();
	end
	reply:up():tag("pending");
	for _, requester in ipairs(requesters) do
		reply:tag("item", { jid = requester }):up();
	end
	event.origin.send(reply);
end);

-- Users' roster requests held until the component has synced the user.

local now = require "util.time".now;

local SYNC_TIMEOUT = module:get_option_number("roster_admin_sync_timeout", 30);
-- Requests per message at most. Prosody runs timers between batches of ready connections
-- (0.12 once none is ready; 13 after each batch of up to 256, as its poller returns at once
-- from a wait of 0), so through a login storm it is mostly this count, not the timer below,
-- that sends them: at ~0.6 ms to read and hold a request, the first of 32 waits ~20 ms.
local BATCH_MAX = 32;

local PAUSE_MAX = module:get_option_number("roster_admin_answered_pause", 1);

local holder; -- the component's session, once it has asked for holds (until it goes)
local held = {}; -- ref of a held request -> { event, deadline }
local unsent = {}; -- held requests the component has not been told of yet (<user> attributes)
local sending = false; -- the send below is scheduled
local watching = false; -- the watch below is scheduled
local paused = {}; -- sessions answered while others were held, oldest first: { session, since }
local first_paused, last_paused = 1, 0; -- paused[first_paused .. last_paused] still are
local unwritten, unwritten_count = {}, 0; -- session -> since when its answer waits to be written
local resuming = false; -- the resume below is scheduled

local function written(session)
	if not unwritten[session] then return false; end
	unwritten[session] = nil;
	unwritten_count = unwritten_count - 1;
	return true;
end

local function resume(entry)
	local session = entry.session;
	if session.conn and not session.destroyed then session.conn:resume(); end
end

local function resume_all()
	if first_paused > last_paused then return; end
	module:log("debug", "Reading again from %d client(s) answered while others were held",
		last_paused - first_paused + 1);
	for i = first_paused, last_paused do resume(paused[i]); end
	paused, first_paused, last_paused = {}, 1, 0;
	unwritten, unwritten_count = {}, 0;
end

-- Those paused for PAUSE_MAX (the oldest come first).
local function resume_overdue()
	local entry = paused[first_paused];
	while first_paused <= last_paused and now() - entry.since >= PAUSE_MAX do
		module:log("debug", "Reading again from %s after %ss, others still held",
			tostring(entry.session.full_jid), tostring(PAUSE_MAX));
		resume(entry);
		paused[first_paused] = nil;
		first_paused = first_paused + 1;
		entry = paused[first_paused];
	end
end

-- Once nothing is held and every answer is written out: at Prosody's next turn of timers.
local function resume_when_idle()
	if resuming or next(held) ~= nil or unwritten_count > 0 or first_paused > last_paused then
		return;
	end
	resuming = true;
	module:add_timer(0, function()
		resuming = false;
		if next(held) == nil and unwritten_count == 0 then resume_all(); end
	end);
end

-- Answers not written out within PAUSE_MAX (a client that stopped reading) are waited for no
-- longer.
local function give_up_unwritten()
	local given_up = now() - PAUSE_MAX;
	for session, since in pairs(unwritten) do
		if since <= given_up then written(session); end
	end
end

-- Whose answers are waited for, and who may be paused.
local function pausable(origin)
	local conn = origin.conn;
	return PAUSE_MAX > 0 and not origin.bosh_version and conn ~= nil and conn.pause ~= nil;
end

local function pause(origin)
	origin.conn:pause();
	last_paused = last_paused + 1;
	paused[last_paused] = { session = origin, since = now() };
end

-- mod_c2s says so once a session's connection has written out all it had to send.
module:hook("c2s-ondrain", function(event)
	if written(event.session) then resume_when_idle(); end
end);

-- A session closed before its answer was written out never drains.
module:hook("resource-unbind", function(event)
	if written(event.session) then resume_when_idle(); end
end);

-- Lets mod_roster answer a held request from the user's stored roster, now in line.
local function release(ref, outcome)
	local entry = held[ref];
	if not entry then return; end
	held[ref] = nil;
	local origin, stanza = entry.event.origin, entry.event.stanza;
	if origin.destroyed then return; end
	module:log("debug", "Roster request of %s released (%s)", origin.full_jid, outcome);
	local pausing = pausable(origin);
	if pausing and not unwritten[origin] then
		-- Before the answer: a connection that writes at once (opportunistic_writes) drains in it.
		unwritten[origin] = now();
		unwritten_count = unwritten_count + 1;
	end
	if not module:fire_event("iq/self/"..ROSTER_NS..":query", entry.event) then
		origin.send(st.error_reply(stanza, "cancel", "service-unavailable"));
	end
	if pausing and next(held) ~= nil then pause(origin); end
	resume_overdue();
	resume_when_idle();
end

-- Requests sent to a session that is gone get no answer: theirs are answered at once.
local function release_all(outcome)
	unsent = {};
	local refs = {};
	for ref in pairs(held) do refs[#refs + 1] = ref; end
	for _, ref in ipairs(refs) do release(ref, outcome); end
	if #refs > 0 then
		module:log("warn", "Answered %d held roster request(s) from the store: %s", #refs, outcome);
	end
end

local function holding()
	if holder and holder.destroyed then
		module:log("info", "%s is gone: roster requests are delegated again", holder.host);
		holder = nil;
		release_all("the component went away");
	end
	return holder ~= nil;
end

-- Once a second while requests are held: those past their deadline, or all of them when the
-- component has gone, are answered from the store (one timer, however many are held).
local function watch()
	resume_overdue();
	give_up_unwritten();
	resume_when_idle();
	if holding() then
		local expired = {};
		for ref, entry in pairs(held) do
			if entry.deadline <= now() then expired[#expired + 1] = ref; end
		end
		for _, ref in ipairs(expired) do
			module:log("warn", "No answer from %s within %ds to sync %s: answering from the "
				.."store", holder.host, SYNC_TIMEOUT, held[ref].event.origin.full_jid);
			release(ref, "timed out");
		end
	end
	if next(held) == nil and first_paused > last_paused and unwritten_count == 0 then
		watching = false;
		return nil;
	end
	return 1;
end

-- Tells the component of the requests held since the last message.
local function send_syncs()
	sending = false;
	if not holding() or #unsent == 0 then return; end
	local message = st.message({ from = module.host, to = holder.host }):tag("sync", { xmlns = NS });
	for _, user in ipairs(unsent) do message:tag("user", user):up(); end
	unsent = {};
	module:send(message);
end

local function parse_hold(request)
	if #request.tags ~= 1 or request.tags[1].name ~= "batches" then
		return nil, "expected <batches/>: the component is older than this module, update it "
			.."(it answers roster requests itself meanwhile)";
	end
	return true;
end

on_request("set", "hold", "request to hold roster requests", parse_hold, function(event)
	if holder ~= event.origin then
		release_all("the component connected again");
		holder = event.origin;
		module:log("info", "Holding users' roster requests until %s has synced the user",
			holder.host);
	end
	event.origin.send(st.reply(event.stanza));
end);

-- A client's roster get: held while the component syncs the user, instead of being
-- delegated to it (mod_delegation hooks at 2^32). Prosody then answers from its own store,
-- with its own versions (XEP-0237) and its own pushes to the session: the roster crosses
-- the component's stream only where it changed, as writes.
module:hook("iq/bare", function(event)
	local origin, stanza = event.origin, event.stanza;
	if not event.to_self or stanza.attr.type ~= "get" or origin.type ~= "c2s" then return; end
	local query = stanza.tags[1];
	if #stanza.tags ~= 1 or query.name ~= "query" or query.attr.xmlns ~= ROSTER_NS then return; end
	if not holding() then return; end
	local ref = new_id();
	held[ref] = { event = event, deadline = now() + SYNC_TIMEOUT };
	if not watching then
		watching = true;
		module:add_timer(1, watch);
	end
	unsent[#unsent + 1] = { name = origin.username, session = origin.full_jid, ref = ref };
	if #unsent >= BATCH_MAX then
		send_syncs();
	elseif not sending then
		sending = true;
		module:add_timer(0, send_syncs); -- at Prosody's next turn of timers
	end
	return true;
end, 2^32 + 1);

-- The component's word on the users it has synced. From anyone else (a client can send a
-- message to the host too) it is dropped.
module:hook("message/host", function(event)
	local synced = event.stanza:get_child("synced", NS);
	if not synced then return; end
	if event.origin ~= holder then
		module:log("warn", "Dropped sync answers from %s (%s session): not the component",
			tostring(event.stanza.attr.from), tostring(event.origin.type));
		return true;
	end
	for user in synced:childtags("user", NS) do
		local ref, condition = user.attr.ref, user.attr.error;
		if ref and held[ref] and condition then
			module:log("warn", "%s could not sync %s for a held roster request (%s): answering "
				.."from the store", holder.host, held[ref].event.origin.full_jid, condition);
		end
		release(ref, condition or "synced");
	end
	return true;
end, 2^32);

-- Unloaded or reloaded (which forgets what is held): nobody would answer those requests.
-- The component's next roster requests are delegated to it until it asks again.
function module.unload()
	release_all("the module was unloaded");
	resume_all(); -- now: the module's timers go with it
end
