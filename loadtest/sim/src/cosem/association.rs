//! The meter's side of an association: AARQ to AARE (lowest, LLS, HLS-GMAC pass 2 and
//! 4), ciphered requests opened and answered in the same envelope, with invocation
//! counters checked.

use super::*;

impl Meter {
    pub(super) fn associate(&mut self, spec: &MeterSpec, a: &Aarq) -> Vec<u8> {
        self.assoc = None;
        let reject = |diag: u8, user: Option<Apdu>| {
            Apdu::Aare(Aare {
                protocol_version: None,
                application_context: a.application_context,
                result: AssociationResult(1),
                diagnostic: Diagnostic::AcseServiceUser(AcseServiceUser(diag)),
                responding_ap_title: None,
                responding_ae_qualifier: None,
                responding_ap_invocation_id: None,
                responding_ae_invocation_id: None,
                responder_acse_requirements: None,
                mechanism_name: None,
                responding_authentication_value: None,
                implementation_information: None,
                user_information: user.map(Box::new),
            })
            .to_bytes()
            .unwrap_or_default()
        };
        let ciphered = match a.application_context.0 {
            1 => false,
            3 if keys_of(&self.rotated, spec).is_some() => true,
            _ => return reject(2, None),
        };
        let mechanism = a.mechanism_name.map_or(0, |m| m.0);
        let client_title: Option<SystemTitle> =
            a.calling_ap_title.as_deref().and_then(|t| SystemTitle::try_from(t).ok());
        match mechanism {
            0 => {}
            1 => {
                let pw = a.calling_authentication_value.as_deref().unwrap_or_default();
                if spec.password.is_empty() || pw != spec.password.as_slice() {
                    return reject(13, None);
                }
            }
            5 => {
                if keys_of(&self.rotated, spec).is_none() || client_title.is_none() {
                    return reject(11, None);
                }
                let c = a.calling_authentication_value.as_deref().unwrap_or_default();
                if !(8..=64).contains(&c.len()) {
                    return reject(13, None);
                }
            }
            _ => return reject(11, None),
        }
        if ciphered && client_title.is_none() {
            return reject(3, None);
        }
        // The InitiateRequest, plain or as glo-initiate-request.
        let initiate = match a.user_information.as_deref() {
            Some(Apdu::InitiateRequest(i)) if !ciphered => Some(i.clone()),
            Some(Apdu::Ciphered(c)) if ciphered && c.cipher.0 == tag::GLO_INITIATE_REQUEST => {
                match self.open(spec, c, client_title, false) {
                    Ok(plain) => match Apdu::decode(&plain) {
                        Ok(Apdu::InitiateRequest(i)) => Some(i),
                        _ => None,
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let Some(init) = initiate else {
            return reject(1, Some(initiate_error(1)));
        };
        if init.proposed_dlms_version < 6 {
            return reject(1, Some(initiate_error(1)));
        }
        let supported = Conformance::from_names([
            "block-transfer-with-get-or-read",
            "multiple-references",
            "data-notification",
            "get",
            "set",
            "selective-access",
            "event-notification",
            "action",
            "priority-mgmt-supported",
        ])
        .unwrap_or(Conformance(0));
        let conformance = Conformance(init.proposed_conformance.0 & supported.0);
        let max_pdu = match init.client_max_receive_pdu_size {
            0 => 0xFFFF,
            n => n.max(64),
        } as usize;
        let hls = mechanism == 5;
        self.challenge_seq += 1;
        let stoc: Vec<u8> = if hls {
            (0..16u64).map(|i| (crate::model::mix(spec.key ^ self.challenge_seq << 8 ^ i) & 0xFF) as u8).collect()
        } else {
            Vec::new()
        };
        let response = Apdu::InitiateResponse(InitiateResponse {
            negotiated_quality_of_service: None,
            negotiated_dlms_version: 6,
            negotiated_conformance: conformance,
            server_max_receive_pdu_size: SERVER_MAX_PDU,
            vaa_name: 0x0007,
        })
        .to_bytes()
        .unwrap_or_default();
        let user = if ciphered {
            let ic = self.take_ic();
            let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec), spec.title) else { return reject(2, None) };
            match encipher_with(
                keys,
                CipheredKind(tag::GLO_INITIATE_RESPONSE),
                SecurityControl(0x30),
                &title,
                ic,
                &response,
            ) {
                Ok(c) => Apdu::Ciphered(c),
                Err(_) => return reject(1, None),
            }
        } else {
            match Apdu::decode(&response) {
                Ok(a) => a,
                Err(_) => return reject(1, None),
            }
        };
        self.assoc = Some(Association {
            ciphered,
            mechanism,
            client_title,
            authenticated: !hls,
            stoc: stoc.clone(),
            ctos: a.calling_authentication_value.clone().unwrap_or_default(),
            max_pdu,
            conformance,
            dedicated: init.dedicated_key.as_deref().and_then(|k| <[u8; 16]>::try_from(k).ok()),
            dedicated_ic: None,
        });
        Apdu::Aare(Aare {
            protocol_version: None,
            application_context: ApplicationContext(a.application_context.0),
            result: AssociationResult(0),
            diagnostic: Diagnostic::AcseServiceUser(AcseServiceUser(if hls { 14 } else { 0 })),
            responding_ap_title: (ciphered || hls).then(|| spec.title.map(|t| t.to_vec())).flatten(),
            responding_ae_qualifier: None,
            responding_ap_invocation_id: None,
            responding_ae_invocation_id: None,
            responder_acse_requirements: hls.then_some(true),
            mechanism_name: hls.then_some(Mechanism(5)),
            responding_authentication_value: hls.then_some(stoc),
            implementation_information: None,
            user_information: Some(Box::new(user)),
        })
        .to_bytes()
        .unwrap_or_default()
    }

    /// Verifies and deciphers a request; enforces the client's invocation counter.
    pub(super) fn open(
        &mut self,
        spec: &MeterSpec,
        c: &Ciphered,
        sender: Option<SystemTitle>,
        dedicated: bool,
    ) -> Result<Vec<u8>, ExceptionResponse> {
        let deciphering = ExceptionResponse {
            state_error: ExceptionStateError(1),
            service_error: ExceptionServiceError(5),
            invocation_counter: None,
        };
        let Some(keys) = keys_of(&self.rotated, spec) else { return Err(deciphering) };
        let policy = Policy { require_authentication: true, require_encryption: false };
        let d = if dedicated {
            let Some(dk) = self.assoc.as_ref().and_then(|a| a.dedicated) else { return Err(deciphering) };
            // The dedicated key replaces the encryption key; AK stays.
            let ak = self.ak(spec);
            let k = Keys::new(&dk, &ak);
            decipher_with(&k, c, sender.as_ref(), policy)
        } else {
            decipher_with(keys, c, sender.as_ref(), policy)
        }
        .map_err(|_| deciphering)?;
        let last = if dedicated { self.assoc.as_ref().and_then(|a| a.dedicated_ic) } else { self.client_ic };
        if last.is_some_and(|l| d.invocation_counter <= l) {
            return Err(ExceptionResponse {
                state_error: ExceptionStateError(1),
                service_error: ExceptionServiceError(6),
                invocation_counter: Some(last.unwrap_or(0).saturating_add(1)),
            });
        }
        if dedicated {
            if let Some(a) = self.assoc.as_mut() {
                a.dedicated_ic = Some(d.invocation_counter);
            }
        } else {
            self.client_ic = Some(d.invocation_counter);
        }
        Ok(d.plaintext)
    }

    pub(super) fn ciphered(&mut self, spec: &MeterSpec, grid: &Grid, now_unix: f64, c: Ciphered, out: &mut Output) {
        let Some(assoc) = &self.assoc else {
            out.apdus.push(exception(1, 1));
            return;
        };
        if !assoc.ciphered {
            out.apdus.push(exception(1, 1));
            return;
        }
        let dedicated = c.cipher.is_dedicated();
        let envelope = if c.cipher.is_general() {
            Envelope::General { dedicated, sc: c.security_control }
        } else {
            Envelope::Specific { dedicated, sc: c.security_control }
        };
        let sender = assoc.client_title;
        let plain = match self.open(spec, &c, sender, dedicated) {
            Ok(p) => p,
            Err(e) => {
                out.apdus.push(Apdu::ExceptionResponse(e).to_bytes().unwrap_or_default());
                return;
            }
        };
        if let Some(want) = c.cipher.plaintext_tag() {
            if plain.first() != Some(&want) {
                out.apdus.push(exception(2, 2));
                return;
            }
        }
        match Apdu::decode(&plain) {
            Ok(a) => self.service(spec, grid, now_unix, a, &plain, envelope, out),
            Err(_) => out.apdus.push(exception(2, 2)),
        }
    }

    /// Protects a response in the envelope its request came in.
    pub(super) fn seal(&mut self, spec: &MeterSpec, envelope: Envelope, plain: Vec<u8>) -> Vec<u8> {
        let (dedicated, sc, general) = match envelope {
            Envelope::Plain => return plain,
            Envelope::Specific { dedicated, sc } => (dedicated, sc, false),
            Envelope::General { dedicated, sc } => (dedicated, sc, true),
        };
        if keys_of(&self.rotated, spec).is_none() || spec.title.is_none() {
            return plain;
        }
        let kind = if general {
            CipheredKind(if dedicated { tag::GENERAL_DED_CIPHERING } else { tag::GENERAL_GLO_CIPHERING })
        } else {
            match plain.first().and_then(|&t| CipheredKind::for_plaintext(t, dedicated)) {
                Some(k) => k,
                None => return plain,
            }
        };
        let ic = self.take_ic();
        let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec), spec.title) else { return plain };
        let sealed = if dedicated {
            match self.assoc.as_ref().and_then(|a| a.dedicated) {
                Some(dk) => encipher_with(&Keys::new(&dk, &self.ak(spec)), kind, sc, &title, ic, &plain),
                None => return plain,
            }
        } else {
            encipher_with(keys, kind, sc, &title, ic, &plain)
        };
        match sealed.and_then(|c| Apdu::Ciphered(c).to_bytes()) {
            Ok(b) => b,
            Err(_) => plain,
        }
    }

    pub(super) fn reply_to_hls(
        &mut self,
        spec: &MeterSpec,
        invoke_id: InvokeIdAndPriority,
        parameters: Option<Data>,
    ) -> Apdu {
        let fail = action_response(invoke_id, ActionResult(250), None);
        let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec).cloned(), spec.title) else { return fail };
        let Some(assoc) = &self.assoc else { return fail };
        if assoc.mechanism != 5 || assoc.authenticated {
            return action_response(invoke_id, ActionResult(3), None);
        }
        let Some(client) = assoc.client_title else { return fail };
        let Some(Data::OctetString(f)) = parameters else { return action_response(invoke_id, ActionResult(12), None) };
        let stoc = assoc.stoc.clone();
        let ctos = assoc.ctos.clone();
        // StoC is fresh for every association, so a replayed f(StoC) fails here; its
        // counter is not held against the envelope's (the client may number them in
        // either order).
        if keys.verify_hls_response(&client, &stoc, &f).is_err() {
            return fail;
        }
        let my_ic = self.take_ic();
        let reply = keys.hls_response(&title, my_ic, &ctos);
        if let Some(a) = self.assoc.as_mut() {
            a.authenticated = true;
        }
        action_response(invoke_id, ActionResult(0), Some(GetDataResult::Data(Data::OctetString(reply))))
    }
}

pub(super) fn initiate_error(detail: u8) -> Apdu {
    Apdu::ConfirmedServiceError(ConfirmedServiceError {
        service: ConfirmedService(1),
        error: ServiceErrorKind(6),
        detail,
    })
}
